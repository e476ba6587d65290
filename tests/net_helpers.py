"""Tiny networks shared by the engine and precision tests."""
import mxnet as mx
from mxnet import gluon


def tiny_net(bn=False, seed=0):
    """Conv(4, 3x3) [+ BatchNorm] + ReLU + global average pool + Dense(3), Xavier-initialised
    with ``seed`` and shaped on (1, 3, 8, 8) inputs."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, padding=1, use_bias=not bn))
    if bn:
        net.add(gluon.nn.BatchNorm())
    net.add(gluon.nn.Activation('relu'), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(3))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 8, 8)))
    return net
