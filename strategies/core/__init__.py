"""The rule core, numpy only: what every strategy computes, on both Flower API halves."""
