"""``normkit demo``: batch normalization's claims put to the test on data.

* :mod:`normkit.demo.run` -- ``main(argv)``: ``[NAME] [--quick] [--out DIR] [--seeds K] [--data FILE]``;
  the six experiments, a table each in the terminal, PNG plots and ``report.md`` in ``--out``;
* :mod:`normkit.demo.experiments` -- the experiments (``run_*``: results dicts of numbers; ``describe_*``:
  claim, table and the verdict computed from those numbers);
* :mod:`normkit.demo.common` -- data (scikit-learn's digits or an ``.npz``), models, the training loop,
  the progress bar and the demo's private ``_recalibrate``;
* :mod:`normkit.demo.quickstart` -- torch's BatchNorm2d and normkit's trained side by side.
"""
