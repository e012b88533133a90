"""``hybridcxr pacs``: find radiograph studies in a PACS, analyze them, store the answers back (DICOMweb or DIMSE).

:mod:`~hybridcxr.pacs.dicomweb` and :mod:`~hybridcxr.pacs.dimse` are the two clients behind one interface
(:mod:`~hybridcxr.pacs.remote`), :mod:`~hybridcxr.pacs.state` the SQLite record of answered studies,
:mod:`~hybridcxr.pacs.job` the driver and :mod:`~hybridcxr.pacs.cli` the command.
"""
