"""What a run keeps: the storage root on pyarrow filesystems (a local path or ``s3://…``), the
run's durable record (``state.json``, ``events.jsonl``), step artifacts, checkpoint manifests,
and each step attempt's log (captured where it runs, read back by ``rto logs``).

Imports ``core`` only, of this project.
"""
