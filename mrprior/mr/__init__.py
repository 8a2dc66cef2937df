"""MR physics: FFTs, operators, sampling masks, coil maps, prewhitening, simulation."""
