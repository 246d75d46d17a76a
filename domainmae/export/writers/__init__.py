"""Embedding file writers, one module per kind of file, and the readers of their tables.

A writer takes what the export stream produced (row tables, ``(metas, embeddings)`` groups, or a
scene's strips of per-patch embeddings), the provenance to record and plain parameters (column types,
CRS, sensors, pixel grid); it knows nothing of models or of the export that feeds it, so embeddings
computed anywhere can be written with it. Every writer builds its file beside the target and renames
it at the end. ``embed`` (:mod:`domainmae.export.embed`) picks the writer by format.

* :mod:`.tables`: Parquet (streamed) and AnnData ``.h5ad`` in the pycytominer layout; reading them back.
* :mod:`.geoparquet`: GeoParquet of window footprints.
* :mod:`.raster`: cloud-optimised GeoTIFF (float32 or int8) and Zarr per-patch embedding rasters.
"""
