"""The X-ray station: the watch folder (`cxr-edge watch`: watch, files, exam, store, move, status),
receiving exams from the X-ray unit as a DICOM node (`cxr-edge listen`: listen, receiver), and
sending results back to the PACS as DICOM objects through a persistent outbox (`--forward`:
forwarder, results, sender, outbox, commands)."""
