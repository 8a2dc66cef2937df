"""Input/output: ISMRMRD raw data and images, BART ``.cfl``/``.hdr`` files, image export.

Modules (imported explicitly, so that ``import mrprior.io`` stays light):

- :mod:`mrprior.io.containers`: ``EncodingInfo``, ``KSpace``, ``ImageSeries`` (typed, with header).
- :mod:`mrprior.io.raw`: ``parse_header``, ``AcquisitionBuffer`` (the one place acquisitions
  become k-space, for files and streams), ``read_raw``, ``iter_kspace``, ``iter_acquisitions``.
- :mod:`mrprior.io.twix`: Siemens twix ``.dat`` → ISMRMRD header and acquisitions (twixtools);
  ``convert_twix``. The ``raw`` entry points dispatch ``.dat`` paths to it.
- :mod:`mrprior.io.images`: ``write_images`` / ``read_images`` (ISMRMRD image HDF5, one group
  ``image_<series>`` per image series).
- :mod:`mrprior.io.export`: ``export_png``, ``export_nifti``.
- :mod:`mrprior.io.cfl`: BART ``.cfl``/``.hdr``.
- :mod:`mrprior.io.volumes`: ``load_volume`` (NIfTI, NRRD, DICOM series with Siemens mosaics).
"""
