"""certrisk: certification-aware AI risk management for Apache Airflow.

Certificates (randomized smoothing, interval bounds, Lipschitz bounds) are one signal among
several; a certificate bounds the distance to the nearest class-changing input and never shows
that a sample was not manipulated. See ``certrisk.risk.score.limitations``.
"""

__version__ = "0.1.0"
