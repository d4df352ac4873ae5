"""Real peers the tests start on loopback (Orthanc from Debian), never fakes of our own code."""
