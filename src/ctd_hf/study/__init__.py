"""The study: does CTD help a model on unseen tasks? ``sweep`` searches tuning settings and decoding strengths on
training tasks only; ``tuning_data`` builds the tuning data it compares."""
