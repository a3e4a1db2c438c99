"""The soak: the whole system under steady load for a long time, judged by itself (see
``bench/soak/__main__.py``). One module per job: ``load``, ``sampling``, ``judge``, ``report``,
``plot``, and ``counts`` for the final check."""
