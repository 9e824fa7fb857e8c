"""Where and how an exported model runs best: open any artifact (``artifact``), time it (``bench``), list and
rank the variants a bundle can become (``variants``, ``placement``), and predict latency on another device from
its measured op costs (``profiles``). Above the predictors and the export targets."""
