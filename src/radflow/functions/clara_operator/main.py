import functions_framework

from radflow.functions.clara_operator import logic
from radflow.sdk.runtime import serve


@functions_framework.http
def handle(request):  # type: ignore[no-untyped-def]
    return serve(request, logic.run)
