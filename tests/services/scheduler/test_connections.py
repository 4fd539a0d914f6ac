from services.scheduler.connections import ClientConnections


def test_a_gone_descriptor_names_its_clients_once():
    conns = ClientConnections()
    conns.seen("client:a", 7)
    conns.seen("client:b", 7)
    conns.seen("client:c", 8)
    assert conns.gone(7) == {"client:a", "client:b"}
    assert conns.gone(7) == set()
    assert conns.gone(8) == {"client:c"}
