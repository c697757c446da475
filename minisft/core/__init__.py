"""The ground floor: errors and argument checks, array backends, the model configuration, atomic
file I/O, progress lines, the version, and the switch between reference math and fast paths
(`fastpath`). Everything else in minisft imports from here; this imports nothing above it."""
