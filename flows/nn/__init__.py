"""Neural-network pieces used inside bijectors (conditioners); no bijector logic here."""
