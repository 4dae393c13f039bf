//! The deterministic placement function (next: spreads replicas over nodes with room).
