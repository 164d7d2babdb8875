"""Reading a checkpoint's state: the verdict, the report, byte comparison, `diff`, and `scan`."""
