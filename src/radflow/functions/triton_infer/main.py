import functions_framework
from radflow.sdk.runtime import serve
from radflow.functions.triton_infer import logic

@functions_framework.http
def handle(request):
    return serve(request, logic.run)
