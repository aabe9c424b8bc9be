"""The pipeline: a validated query in, scored series out (model store, score store, view cache, single-flight, grouping, frames, replay for `vigil detect`)."""
