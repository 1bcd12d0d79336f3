"""Pure computation: certification, context, rules, drift, scoring, audits, models and data.

Imports ``certrisk.schemas`` only: usable from a notebook with no Airflow installed.
"""
