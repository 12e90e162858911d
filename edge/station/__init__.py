"""The station on the network: receive exams from the X-ray unit as a DICOM node (`cxr-edge listen`)
and send results back to the PACS as DICOM objects through a persistent outbox (`--forward`)."""
