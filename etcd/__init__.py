"""etcd launcher for the embedded single-node default, and cluster config for deploy."""
