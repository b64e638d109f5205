"""seqio Task and Mixture registrations (installed as `t5pipe.tasks`); importing registers them."""
