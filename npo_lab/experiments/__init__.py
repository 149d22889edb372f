"""Experiments on top of the methods: comparing methods over seeds (:mod:`.compare`, tables and figures in
:mod:`.report`, statistics in :mod:`.stats`), measuring Q, V and S along runs (:mod:`.qvs`), and the analytic toy
where they are exact (:mod:`.toy`). Backend-neutral: a backend comes in as a ``make_backend(seed)`` factory."""
