"""What the admin and the command both show of a sequence: its plan and durations, its
timeline, its ForEach elements, and tables of millions of rows."""
