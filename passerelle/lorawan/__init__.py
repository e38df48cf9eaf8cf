"""LoRaWAN 1.0.x at the edge: frames, keys, sessions, the network server, payload codecs."""
