"""A client generated from the served OpenAPI document by openapi-python-client
(PyPI) creates a tenant, a network, a function and a port against a running
agent, and reads them back as typed objects. Run by tests/tests/generated_client.rs
with the generated package on PYTHONPATH; the agent's URL and the fleet
controller's identity come from the environment."""

import os
import ssl
import sys

from dpu_client import Client
from dpu_client.api.functions import get_function, put_function
from dpu_client.api.networks import put_network
from dpu_client.api.ports import get_port, list_ports, put_port
from dpu_client.api.tenants import put_tenant
from dpu_client.models import (
    FunctionPutBody,
    FunctionSpec,
    FunctionSpecType,
    NetworkPutBody,
    NetworkSpec,
    NetworkSpecEncap,
    Problem,
    PortPutBody,
    PortSpec,
    TenantPutBody,
    TenantSpec,
)

ctx = ssl.create_default_context(cafile=os.environ["DPU_CA"])
ctx.load_cert_chain(os.environ["DPU_CERT"], os.environ["DPU_KEY"])
client = Client(base_url=os.environ["DPU_URL"], verify_ssl=ctx, raise_on_unexpected_status=True)


def ok(what, resp):
    if resp.parsed is None or isinstance(resp.parsed, Problem):
        sys.exit(f"{what}: {resp.status_code} {resp.content!r}")
    print(f"{what}: {resp.status_code}")
    return resp.parsed


with client as c:
    ok("put tenant", put_tenant.sync_detailed("gen", client=c, body=TenantPutBody(spec=TenantSpec(description="made by a generated client"))))
    ok("put network", put_network.sync_detailed("gen-net", client=c, body=NetworkPutBody(
        tenant="gen", spec=NetworkSpec(vni=4242, cidr="10.42.0.0/24", encap=NetworkSpecEncap.LOCAL))))
    ok("put function", put_function.sync_detailed("gen-fn", client=c, body=FunctionPutBody(
        tenant="gen", spec=FunctionSpec(type_=FunctionSpecType.NET, pf="pf0", mac="02:00:00:42:00:01"))))
    port = ok("put port", put_port.sync_detailed("gen-port", client=c, body=PortPutBody(
        tenant="gen", spec=PortSpec(network="gen-net", function="gen-fn", mac="02:00:00:42:00:01", ips=["10.42.0.10"]))))
    assert port.spec.ips == ["10.42.0.10"], port.spec
    got = ok("get port", get_port.sync_detailed("gen-port", client=c))
    assert got.spec.network == "gen-net" and got.generation == 1, got
    fn = ok("get function", get_function.sync_detailed("gen-fn", client=c))
    assert fn.spec.type_ == FunctionSpecType.NET, fn
    listed = ok("list ports", list_ports.sync_detailed(client=c, tenant="gen"))
    assert [p.id for p in listed.items] == ["gen-port"], listed
    # A refusal comes back as the typed problem, naming the field.
    bad = put_network.sync_detailed("gen-bad", client=c, body=NetworkPutBody(
        tenant="gen", spec=NetworkSpec(vni=4242, cidr="10.43.0.0/24", encap=NetworkSpecEncap.LOCAL)))
    assert bad.status_code == 422 and isinstance(bad.parsed, Problem) and bad.parsed.field == "spec.vni", bad
    print("generated client: tenant, network, function and port created and read back")
