"""Local policies: the regulatory duty-cycle gate, data sobriety, lighting."""
