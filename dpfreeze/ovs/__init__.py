"""Talking to OVS itself: its directories, OVSDB, OpenFlow, unixctl, netdev settings, datapath resolution."""
