"""Student families: each builds its modules from a student file and runs the network part."""
