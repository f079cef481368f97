"""Keyed UID remapping: ``2.25.`` + decimal of HMAC-SHA256(site secret, UID)[:128 bits]."""
from __future__ import annotations

import hashlib
import hmac

from pydicom.datadict import tag_for_keyword

WELL_KNOWN_ROOT = "1.2.840.10008."

# UI attributes whose values name classes, syntaxes or coding schemes, not instances:
# kept as they are even when not rooted at 1.2.840.10008 (e.g. SNOMED's OID).
_CLASS_KEYWORDS = (
    "MediaStorageSOPClassUID", "TransferSyntaxUID", "SOPClassUID", "ReferencedSOPClassUID",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "SOPClassesInStudy",
    "ReferencedSOPClassUIDInFile", "ReferencedRelatedGeneralSOPClassUIDInFile",
    "ReferencedTransferSyntaxUIDInFile", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
    "MappingResourceUID", "ContextUID", "TemplateExtensionOrganizationUID",
    "TemplateExtensionCreatorUID", "EncryptedContentTransferSyntaxUID", "AffectedSOPClassUID",
    "RequestedSOPClassUID", "StoredInstanceTransferSyntaxUID", "SOPClassesSupported",
    "AvailableTransferSyntaxUID", "FlowTransferSyntaxUID", "MACCalculationTransferSyntaxUID",
    "PertinentSOPClassesInStudy", "PertinentSOPClassesInSeries", "RTVCommunicationSOPClassUID",
)
CLASS_UID_TAGS = frozenset(int(tag_for_keyword(k)) for k in _CLASS_KEYWORDS)

# This de-identifier's own Implementation Class UID (file meta), derived once.
IMPLEMENTATION_CLASS_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"fedrad client.deid implementation").digest()[:16], "big")
)
IMPLEMENTATION_VERSION_NAME = "FEDRAD_DEID_1"


def is_well_known(uid: str) -> bool:
    """True for UIDs registered by DICOM itself (SOP classes, transfer syntaxes, ...)."""
    return uid.startswith(WELL_KNOWN_ROOT)


class UidMapper:
    """Map instance UIDs to site-keyed ``2.25`` UIDs; the same secret gives the same map."""

    def __init__(self, site_secret: bytes) -> None:
        self._secret = bytes(site_secret)

    def __call__(self, uid: str) -> str:
        """The keyed replacement for ``uid``; well-known DICOM UIDs are returned as they are."""
        uid = str(uid).strip(" \0")
        if not uid or is_well_known(uid):
            return uid
        digest = hmac.new(self._secret, uid.encode("utf-8"), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))
