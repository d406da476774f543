"""Load tests against a live vpsd serve on real QEMU (issue 4)."""
