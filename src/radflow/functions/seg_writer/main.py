import functions_framework

from radflow.functions.seg_writer import logic
from radflow.sdk.runtime import serve


@functions_framework.http
def handle(request):
    return serve(request, logic.run)
