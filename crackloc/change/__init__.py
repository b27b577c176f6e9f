"""Change between two inspections of one surface: register AFTER onto BEFORE (register.py), then
match cracks and report the new and grown ones."""
