import functions_framework

from radflow.functions.job_tracker import service


@functions_framework.http
def handle(request):  # type: ignore[no-untyped-def]
    return service.handle(request.method, request.path, dict(request.headers), request.get_data())
