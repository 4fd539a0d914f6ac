"""The wire: typed, frozen, versioned messages, their one codec, sockets, link emulation, ordering."""
