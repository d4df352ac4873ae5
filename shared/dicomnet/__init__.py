"""DICOM networking shared by the gateway and the DICOM listener: results sent to a PACS.

:mod:`destinations` holds one sender per protocol (STOW-RS with httpx, C-STORE with
pynetdicom); :mod:`delivery` is the bounded retry queue in front of them. Torch-free.
"""

from shared.dicomnet.delivery import DeliveryCounts, DeliveryQueueFull, ResultsDelivery
from shared.dicomnet.destinations import (
    Destination,
    DestinationConfigError,
    DicomWebDestination,
    SendOutcome,
    StoreScuDestination,
)

__all__ = [
    "DeliveryCounts",
    "DeliveryQueueFull",
    "Destination",
    "DestinationConfigError",
    "DicomWebDestination",
    "ResultsDelivery",
    "SendOutcome",
    "StoreScuDestination",
]
