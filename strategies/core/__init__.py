"""The rule core, Flower-free (numpy only): what every strategy computes, on both halves.

- :mod:`~strategies.core.update`: a round's inputs and outputs (client updates,
  coefficients, the round's result);
- :mod:`~strategies.core.codec`: the ``.npy`` layers on the wire;
- :mod:`~strategies.core.options`, :mod:`~strategies.core.state`: the knobs and what
  carries over between rounds;
- :mod:`~strategies.core.rule`: validation, the streaming fold, the server step;
- :mod:`~strategies.core.metrics`: the clients' metrics averaged;
- :mod:`~strategies.core.adapter`: what the Flower adapters share (sampling, pools).
"""
