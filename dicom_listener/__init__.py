"""``spine dicom-listener``: a DICOM C-ECHO / C-STORE receiver in front of the gateway.

An instance received by C-STORE is written durably to the spool (:mod:`.spool`) before
Success is answered, grouped by study (:mod:`.studies`), sent to the gateway's
``POST /upload/dicom`` over HTTP (:mod:`.forward`: every gateway limit applies and it
scales with the gateway's replicas), and its SR and presentation state are handed to the
results delivery (``shared.dicomnet``). Each study ends in a report (:mod:`.studyreport`).
:mod:`.service` ties them together (start, replay of the spool, shutdown); :mod:`.scp`
is the pynetdicom side, :mod:`.status` the small HTTP status server.

This package never imports the gateway or the model services (import-linter contract).
"""
