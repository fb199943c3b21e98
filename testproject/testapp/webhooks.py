"""The webhook view of docs/waiting.md: a payment provider tells an order it was paid."""

from __future__ import annotations

# --8<-- [start:webhook]
import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sequence import InvalidData, InvalidTransition, Sequence, UnknownSequence


@csrf_exempt  # the provider signs its requests instead: check the signature here
@require_POST
def activation_webhook(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body)
    try:
        seq = Sequence.get(key=f"user-{payload['user_id']}")
        # Webhooks come more than once: the delivery id makes a second one harmless.
        seq.send("activated", {"plan": payload["plan"]}, id=payload["delivery_id"])
    except UnknownSequence:
        return JsonResponse({"error": "no such onboarding"}, status=404)
    except (InvalidData, InvalidTransition) as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"status": seq.status})


# --8<-- [end:webhook]
