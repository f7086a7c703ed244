"""`longdoc batch`: classify an archive on Ray Data, resumable, every document exactly once.

The modules, in the order a job uses them:

* ``inputs``: what the INPUTs hold (JSON Lines, Parquet, CSV, folders of ``.txt``, on any
  filesystem pyarrow reads), cut into pieces that Ray tasks read; the ids are scanned first,
  so duplicates are refused before any work and a rerun knows what is left;
* ``engines``: what classifies a batch of documents in a Ray actor: clients of one or more
  running servers, or the exported ONNX files in-process (onnxruntime);
* ``output``: part files written under a temporary name and renamed when complete, the
  ids already written (resume), ``_manifest.json`` and the check that a rerun uses the
  same model;
* ``job``: the Ray Data pipeline and the driver loop that writes the parts;
* ``cli``: the command line.

Ray, pyarrow and the engines' libraries are imported when a job runs, so `longdoc --help`
stays instant and `longdoc[client]` installs still list the command.
"""
