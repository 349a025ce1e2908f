"""SFPO (Slow-Fast Policy Optimization) as a Ray RLlib algorithm."""
