import functions_framework

from radflow.functions.scu_export import deps, logic
from radflow.sdk.runtime import serve


def run(ctx):
    # the one difference from the template: logic stays pure of S3, the config is read here
    return logic.run(ctx, destinations=deps.load_adapter_config())


@functions_framework.http
def handle(request):
    return serve(request, run)
