import functions_framework

from radflow.functions.triton_infer import logic
from radflow.sdk.runtime import serve


@functions_framework.http
def handle(request):
    return serve(request, logic.run)
