"""Flower app: configuration, data, models, training, and the Client/Server apps."""
