"""Tie and untie: the plan (plain data), its execution, and the crash-safe output writer."""
