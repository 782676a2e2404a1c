import functions_framework

from radflow.functions.dicom_parser import logic
from radflow.sdk.runtime import serve


@functions_framework.http
def handle(request):
    return serve(request, logic.run)
