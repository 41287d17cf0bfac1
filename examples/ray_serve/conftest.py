def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts a local Ray cluster (about half a minute)")
