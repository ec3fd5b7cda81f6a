"""The web app: browse results, review the uncertain ones from the keyboard, correct labels
(which feed ``labeled/`` and retraining), manage models; a JSON API and Prometheus metrics.
It reads the ledger and sends tasks through the broker; it never classifies."""
