import functions_framework

from radflow.functions.clara_operator import logic
from radflow.shared.runtime import serve


@functions_framework.http
def handle(request):  # type: ignore[no-untyped-def]
    return serve(request, logic.run)
