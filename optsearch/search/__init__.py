"""The evolutionary search: study config, storage, the genetic sampler, the run loop and its workers, show/export."""
