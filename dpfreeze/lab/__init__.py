"""Throwaway labs and measurements: sandbox OVS, topologies, demo, benches."""
